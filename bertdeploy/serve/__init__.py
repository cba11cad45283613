"""`bertdeploy serve`: httpapi (the HTTP contract both engines share), local (uvicorn, with batcher and
kserve), ray_engine (Ray Serve). Runtime wing: never imports torch, `bertdeploy.build` or `bertdeploy.bench`.
"""
