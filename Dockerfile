# Minimal image: the project installed and its data checked. The Space issue turns this into the arena's
# image (port 7860, the Space's environment, a CPU-only torch).
FROM python:3.11-slim
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user . .
CMD ["python", "-m", "finetune", "data", "--check"]
