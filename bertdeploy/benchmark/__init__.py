"""`bertdeploy bench`: run (the command), cases (inputs), engines (what is timed), probe (load time and memory
in a fresh process), report (results, JSON, charts). Build wing: may import `bertdeploy.builder` and the runtime.
"""
