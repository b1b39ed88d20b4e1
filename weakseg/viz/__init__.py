"""Visualisation: palettes, CAM overlays, the HTML run report."""
