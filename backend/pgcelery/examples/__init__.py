"""Small, tested examples of pgcelery task patterns; include them in an app to try them."""
