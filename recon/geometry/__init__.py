"""Geometry, the ground floor: cameras (one internal convention, OpenCV world-to-camera, with
converters at the edges), CT scan geometry, rotations, and view selection."""
