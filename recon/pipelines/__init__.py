"""recon.pipelines"""
