#!/usr/bin/env python3
"""The timings of issue 17's point 5, against a running `faasd serve` (see bench-images.sh):

- `cold URL FAASD IMAGE CALLS`: registers IMAGE (a `cat` image) as an `oci` function, times
  the first sync call after the registration (the worker fetches and unpacks the image), then
  CALLS more sequential cold calls from the unpacked cache; prints the first and the p50/p99.
- `first URL FAASD IMAGE NAME PORT PATH`: registers IMAGE as an HTTP-service function
  listening on PORT, then times from the registration's answer until `GET
  /function/NAME/PATH` answers 200 (the first request starts the executor and waits for its
  port).
"""

import json
import statistics
import subprocess
import sys
import time
import urllib.request


def register(faasd, url, name, image, *extra):
    subprocess.run([faasd, "register", name, image, "--runtime", "oci", "--url", url, *extra],
                   check=True, stdout=subprocess.DEVNULL)


def call(url, name, payload=b"x"):
    """One sync call; returns seconds and the answer's body."""
    request = urllib.request.Request(f"{url}/v1/functions/{name}/invoke", data=payload,
                                     method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request) as answer:
        body = answer.read()
    return time.perf_counter() - started, body


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def cold(url, faasd, image, calls):
    register(faasd, url, "img-cold", image)
    first, body = call(url, "img-cold")
    assert body == b"x", body
    times = sorted(call(url, "img-cold")[0] for _ in range(int(calls)))
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"image function, first call after register (fetch + unpack + run): {ms(first)}")
    print(f"image function, cold calls from the cache ({calls} sequential): "
          f"p50 {ms(statistics.median(times))}, p99 {ms(p99)}")


def first(url, faasd, image, name, port, path):
    register(faasd, url, name, image, "--http-port", port)
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/function/{name}/{path}") as answer:
        answer.read()
        status = answer.status
    took = time.perf_counter() - started
    assert status == 200, status
    print(f"HTTP-service function {name}, register to the first 200: {ms(took)}")


if __name__ == "__main__":
    {"cold": cold, "first": first}[sys.argv[1]](*sys.argv[2:])
