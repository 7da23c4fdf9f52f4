"""Where the bytes go: the folders and RAM a save fills; the refusal of a save that cannot fit."""
