"""Learned models used as priors: the CT refiner (:mod:`recon.prior.ct_refiner`) and their
shipped weights (``recon/prior/weights/``, each with a model card and the script that trains it);
for captures, diffusion priors on pseudo views (``recon fit --prior``): the pseudo views
(:mod:`recon.prior.pseudo_views`), repairers (:mod:`recon.prior.repair`: local pretrained
diffusers pipelines; :mod:`recon.prior.scene_repair`: a model trained on the scene) and the
guidance of the fit (:mod:`recon.prior.guidance`). docs/priors.md."""
