#!/bin/sh
# Run any command (a CLI of this project) inside the image.
exec "$@"
