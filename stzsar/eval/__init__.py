"""stzsar.eval."""
