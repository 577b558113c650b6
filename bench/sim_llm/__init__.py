"""Simulated LLM engine plugged into Ray Serve LLM's real OpenAI path.

    from sim_llm.app import build_sim_openai_app
    app = build_sim_openai_app(num_replicas=2, router="prefix")

Modules: engine (SimulatedEngine, SimEngineConfig), server (SimLLMServer),
app (build_sim_openai_app, fetch_sim_stats).
"""
