"""`bertdeploy optimize`: choose (the candidates and the choice), run (making, timing, keeping), report (report.json
and report.html). Build wing: it drives distill, export and bench, never copies them."""
