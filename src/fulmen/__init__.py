"""fulmen: PyTorch Lightning's API with almost none of its overhead."""

__version__ = "0.1.0"
