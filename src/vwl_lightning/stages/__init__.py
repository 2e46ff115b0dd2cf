"""Pipeline stages, one task per stage, named by what it does: ``train_classifier`` → ``make_cams`` →
``evaluate_seeds`` → ``make_pseudo_masks`` → ``train_segmenter``; ``pipeline`` runs them in order."""
