// The version of this build, in one place: `backstop --version`, the metric
// backstop_build_info and the package read it. Nothing else.

public enum BuildInfo {
    public static let version = "0.1.0"
}
