"""What an encoder's embeddings are used for beyond training: drift between two image pools (drift.py),
nearest neighbours and near-duplicates (search.py), which images to label next (select.py), and
streaming image files through an encoder (files.py)."""
