{
  description = "causal-conv1d: causal depthwise conv1d kernels (CPU and CUDA) for the Hugging Face kernel hub";

  inputs = {
    kernel-builder.url = "github:huggingface/kernels";
  };

  outputs =
    { self, kernel-builder }:
    kernel-builder.lib.genKernelFlakeOutputs {
      inherit self;
      path = ./.;

      # The CPU tiers (build.toml: cpu_avx2, cpu_avx512) pass x86 flags, so
      # CPU variants are built for x86_64-linux only. CUDA variants keep every
      # system the builder offers.
      torchVersions =
        allVersions:
        builtins.map (
          version:
          if (version.cpu or false) then
            version // { systems = builtins.filter (system: system == "x86_64-linux") version.systems; }
          else
            version
        ) allVersions;
    };
}
