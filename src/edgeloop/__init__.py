"""edgeloop: human-in-the-loop image segmentation as a Kedro project."""

__version__ = "0.1.0"
