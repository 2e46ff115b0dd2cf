"""Data sets (VOC layout, COCO, the embedded synthetic benchmark) and transforms."""
