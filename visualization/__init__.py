"""Visualisation tools; ``temporal_cam.py`` is the CLI, ``cam`` holds its maths and drawing."""
