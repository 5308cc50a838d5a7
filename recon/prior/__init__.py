"""Learned models used as priors: the CT refiner (:mod:`recon.prior.ct_refiner`) and their
shipped weights (``recon/prior/weights/``, each with a model card and the script that trains it)."""
