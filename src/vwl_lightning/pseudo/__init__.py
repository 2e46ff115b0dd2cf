"""Pseudo-label methods: CAMs (+ image) -> pseudo masks. One method per module; the dense CRF they share."""
