"""The store: versions, the manifest, the card, work folders."""
