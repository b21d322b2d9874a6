"""The local store of vDisks (files + manifests, atomic publish)."""
