"""The embedded default: a generated scene dataset and a small AlexNet-like network."""
