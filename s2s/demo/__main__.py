"""``python -m s2s.demo``: see :mod:`s2s.demo.launcher`."""

from __future__ import annotations

from s2s.demo.launcher import main

raise SystemExit(main())
