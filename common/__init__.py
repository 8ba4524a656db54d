"""What finetune/ and demo/ share without depending on each other: the CLIs' one-line errors and the readers of
the user's input files (prompt files, YAML). It imports neither package."""
