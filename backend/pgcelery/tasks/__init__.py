"""pgcelery's built-in tasks, included by every app ``create_app`` builds."""
