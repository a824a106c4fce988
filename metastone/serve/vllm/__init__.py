"""vLLM: the one engine builder (``engine``), the SPRM scorer (``scorer``), the SPRM model classes (``models``)
and their registration (``plugin``), CPU sizing (``cpu``) and CPU sampling processors (``cpu_sampling``)."""
