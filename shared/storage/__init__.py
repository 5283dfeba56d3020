"""S3 storage and safe source archives."""
