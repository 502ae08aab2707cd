"""The version of imgcls, in a module of its own so that any room can name it without
importing the package's public API (and with it the classifier)."""

__version__ = "0.1.0"
