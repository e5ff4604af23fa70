"""stzsar.train."""
