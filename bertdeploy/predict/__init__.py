"""`bertdeploy predict`: rows (the file contract both engines share), local (this process), ray_engine (Ray
Data). Runtime wing: never imports torch, `bertdeploy.build` or `bertdeploy.bench`.
"""
