"""feature_service package."""
