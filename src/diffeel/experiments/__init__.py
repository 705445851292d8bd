"""Experiments: the jobs that compose the library. The demo (embedded world → training recipes →
per-weather evaluation → report) and weather variants of any benchmark. They sit above ``train``,
``synth``, ``world``, ``evaluation`` and ``report``; only the command line imports them."""
