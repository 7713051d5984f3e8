"""Maintenance windows: pure calendar functions over dates (``calendar``: window slots,
blackouts, the scheduler's decisions; ``windows``: a run's deadline), the estate's schedule as
calendar values with the blackout check of manual runs (``plan``), and the scheduler that runs
the playbooks in their windows under an overlap lock (``scheduler``)."""
