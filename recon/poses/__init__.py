"""Camera poses: estimation from photos with COLMAP (:mod:`recon.poses.colmap`), refinement of
given poses (:mod:`recon.poses.refine`), and alignment / error measures
(:mod:`recon.poses.colmap`: ``align_sim3``, ``pose_errors``)."""
