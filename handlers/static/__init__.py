"""The ``static`` handler: files under a root, validators, ranges, precompressed variants, a small-file cache."""
