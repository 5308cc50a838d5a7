"""Adapters from ``recon`` to other frameworks; no reconstruction logic lives here."""
