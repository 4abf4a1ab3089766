fn main() {
    print!("{}", gpubridge::crd::all_as_yaml_stream().unwrap());
}
