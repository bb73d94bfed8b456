"""vitlandscape: train ViTs (MAE, RC-MAE, supervised) and measure their loss landscapes."""

__version__ = "0.1.0"
