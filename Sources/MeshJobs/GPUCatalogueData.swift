/// The GPU catalogue's data: one model a line. Figures are peak values from the vendors'
/// published specifications (FP16: dense tensor throughput), rounded; they weigh GPU-seconds,
/// they do not promise performance. `cc` is the CUDA compute capability (`-`: none). Add a model
/// by adding a line; keep slugs lowercase, words joined by '-', the memory size last when a model
/// comes in several.
enum GPUCatalogueData {
    static let table = """
    # slug          vendor  vram_gib  fp32_tflops  fp16_tflops  cc
    gtx-1080-ti     nvidia  11        11.3         0.2          6.1
    rtx-2080-ti     nvidia  11        13.4         53.8         7.5
    rtx-3060        nvidia  12        12.7         51.2         8.6
    rtx-3070        nvidia  8         20.3         81.3         8.6
    rtx-3080        nvidia  10        29.8         119.0        8.6
    rtx-3090        nvidia  24        35.6         142.0        8.6
    rtx-4060-ti     nvidia  16        22.1         88.0         8.9
    rtx-4070        nvidia  12        29.1         116.8        8.9
    rtx-4080        nvidia  16        48.7         194.9        8.9
    rtx-4090        nvidia  24        82.6         330.3        8.9
    rtx-5090        nvidia  32        104.8        419.0        12.0
    rtx-a4000       nvidia  16        19.2         76.7         8.6
    rtx-a6000       nvidia  48        38.7         154.8        8.6
    t4              nvidia  16        8.1          65.0         7.5
    a10             nvidia  24        31.2         125.0        8.6
    l4              nvidia  24        30.3         121.0        8.9
    l40s            nvidia  48        91.6         362.0        8.9
    v100-16gb       nvidia  16        15.7         125.0        7.0
    v100-32gb       nvidia  32        15.7         125.0        7.0
    a100-40gb       nvidia  40        19.5         312.0        8.0
    a100-80gb       nvidia  80        19.5         312.0        8.0
    h100-80gb       nvidia  80        67.0         989.0        9.0
    h200            nvidia  141       67.0         989.0        9.0
    rx-7900-xtx     amd     24        61.4         122.8        -
    mi210           amd     64        22.6         181.0        -
    mi250x          amd     128       47.9         383.0        -
    mi300x          amd     192       163.4        1307.0       -
    """
}
