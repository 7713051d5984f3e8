"""Maintenance windows as pure functions over dates (``windows``); the scheduler comes later."""
