"""A run on disk: its folder, the folder's lock, training into it, resuming and loading it."""
