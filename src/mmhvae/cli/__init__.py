"""The `mmhvae` command: one thin module per family of verbs, each turning options into one library call."""
