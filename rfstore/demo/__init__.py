"""The embedded default: generated scenes with concept masks (:mod:`.scenes`), a small AlexNet-like
network (:mod:`.network`), its deterministic training (:mod:`.train`) and the trained weights (``weights/``)."""
