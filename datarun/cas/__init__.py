"""Content-addressed storage: chunking, compression, packs and the chunk index."""
