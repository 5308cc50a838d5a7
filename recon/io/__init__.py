"""recon.io"""
