"""recon.splat"""
