"""`imgcls serve`: an HTTP service — REST, the Open Inference Protocol v2, Prometheus
metrics — with dynamic batching in front of each model. `app.create_app(ServeConfig)`
builds the app, `server.run(ServeConfig)` serves it. This package imports nothing itself,
so that reading the feedback store (`serve.feedback`) does not load FastAPI."""
