"""The app subprocess workers of the fair share and limits tests load."""

from __future__ import annotations

from pgcelery import create_app

app = create_app(include=["tests.support.limited_tasks"])
