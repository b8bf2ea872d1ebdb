/// The version of GPUMesh (software, not wire).
public enum GPUMeshVersion {
    /// Semantic version of this build.
    public static let current = "0.2.0"
}
