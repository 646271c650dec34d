"""The product service: catalog, categories, search and recommendations, behind the caches."""
