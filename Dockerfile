# The arena as a Hugging Face Space (Docker SDK): `python demo/app.py` as user 1000 on 0.0.0.0:7860.
# Configure it with the Space's variables and secrets ("Deploy as a Space" in README.md): LIMA_ARENA_LEFT / LIMA_ARENA_RIGHT
# (TGI or Inference Endpoint URLs), HF_TOKEN, LIMA_ARENA_DATASET_REPO, LIMA_ARENA_ADMIN_TOKEN. With no URLs it
# falls back to the embedded default, the quick-cpu pair served in-process: trained here, while the image is
# built (Spaces pass the Space's variables as build arguments), so every start and restart loads it in seconds.
FROM python:3.11-slim
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1 \
    LIMA_ARENA_HOST=0.0.0.0 LIMA_ARENA_PORT=7860 \
    LIMA_ARENA_RUNS=/home/user/app/runs HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
# A CPU build of torch: the Space talks to GPU servers over HTTP, and the embedded default runs on CPU.
RUN pip install --no-cache-dir --user torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user demo demo
COPY --chown=user finetune finetune
COPY --chown=user common common
COPY --chown=user serving serving
COPY --chown=user dialogues dialogues
COPY --chown=user LICENSE README.md ./
# The embedded pair, trained once per build when a side has no URL (10 to 25 minutes on 2 CPU cores; a Space
# whose two sides are servers skips it). The bundled Gemma 3 270M came with requirements.txt: no download.
ARG LIMA_ARENA_LEFT=""
ARG LIMA_ARENA_RIGHT=""
ARG LIMA_ARENA_FIRST_LAUNCH_RECIPE=quick-cpu
RUN if [ -z "$LIMA_ARENA_LEFT" ] || [ -z "$LIMA_ARENA_RIGHT" ]; then \
        python -m finetune train --recipe "$LIMA_ARENA_FIRST_LAUNCH_RECIPE" --output "$LIMA_ARENA_RUNS"; fi
EXPOSE 7860
CMD ["python", "demo/app.py"]
